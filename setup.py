"""Mixture-of-experts and parameter-efficient expert methods for ReID, as fast-reid plugins."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def read_requirements():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


setup(
    name="fastreid-moe-plugins",
    version="0.1.0",
    description="Registered fast-reid components for SAGE-reID, MoE-KD, MoSAIC-ReID, DeMo and DM-Adapter",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["plugins", "plugins.*"]),
    python_requires=">=3.10",
    install_requires=read_requirements(),
    license="Apache-2.0",
)
