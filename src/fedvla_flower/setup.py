"""ament_python package fedvla_flower; `colcon build` on a real ROS 2 install, `pip install -e` here."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "fedvla_flower"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "tests"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml", "pyproject.toml"]),
        ("share/" + PACKAGE + "/config", glob("config/*.yaml")),
    ],
    package_data={"": ["*.yaml", "*.xml", "*.toml"]},
    include_package_data=True,
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="FedVLA developers",
    maintainer_email="fedvla@example.org",
    description="The FedVLA Flower app (ClientApp, ServerApp, strategies, warm local trainer), a thin shell on fedvla_core.federated.",
    license="Apache-2.0",
)
