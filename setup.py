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
    # `pip install -e .[deploy]`: tools/deploy.py --onnx, tools/quantize.py, ONNX models in
    # tools/test.py / tools/infer.py, and tools/benchmark.py --runtimes. Ranges around the
    # versions requirements/dev.txt pins (torch 2.14's exporter needs onnxscript >= 0.5).
    extras_require={
        "deploy": [
            "onnx>=1.17,<2",
            "onnxruntime>=1.20,<2",
            "onnxscript>=0.5,<1",
            "onnx-ir>=1.1,<2",
            "openvino>=2026.4,<2027",
            "nncf>=3.4,<4",
        ]
    },
    license="Apache-2.0",
)
