"""ament_python package fedvla_core; `colcon build` on a real ROS 2 install, `pip install -e` here."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "fedvla_core"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "tests"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/config", glob("config/*.yaml")),
    ],
    package_data={"": ["*.yaml", "*.xml", "*.toml"]},
    include_package_data=True,
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="FedVLA developers",
    maintainer_email="fedvla@example.org",
    description="The FedVLA core: model (IOSP + DGMoE), training engine, MCAP episodes, control loop and Expert-Driven Aggregation. Plain Python and PyTorch, no rclpy, no Flower.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "fedvla-train = fedvla_core.train_cli:main",
        ],
    },
)
