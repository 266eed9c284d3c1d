from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="repvgg_seg",
    version="0.1.0",
    description="RepVGG backbones with structural re-parameterization for mmsegmentation 1.x",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["repvgg_seg", "repvgg_seg.*"]),
    # mmcv (with ops) is built by scripts/bootstrap.sh, never by this setup.py.
    install_requires=["torch>=2.0", "torchvision", "mmengine>=0.10", "mmsegmentation>=1.2"],
    license="Apache-2.0",
)
