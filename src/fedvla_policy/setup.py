"""ament_python package fedvla_policy; `colcon build` on a real ROS 2 install, `pip install -e` here."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "fedvla_policy"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "tests"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.py")),
        ("share/" + PACKAGE + "/config", glob("config/*.yaml")),
    ],
    package_data={"": ["*.yaml", "*.xml", "*.toml"]},
    include_package_data=True,
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="FedVLA developers",
    maintainer_email="fedvla@example.org",
    description="The FedVLA vision-language-action policy (IOSP + DGMoE) and its ROS 2 ExecuteInstruction action server.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "policy_server = fedvla_policy.server_node:main",
        ],
    },
)
