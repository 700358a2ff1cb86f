"""ament_python package fedvla_ros; `colcon build` on a real ROS 2 install, `pip install -e` here."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "fedvla_ros"

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
    description="ROS 2 helpers shared by the stack's nodes: the node main loop, message conversions, typed parameters from config dataclasses.",
    license="Apache-2.0",
)
