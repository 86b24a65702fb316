"""serpent-hf: SeRpEnt (selective resampling over state space models) for Hugging Face transformers."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="serpent-hf",
    version="0.1.0",
    description="SeRpEnt: selective resampling for expressive state space models, as a transformers model",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["serpent_hf", "serpent_hf.*", "modeling", "modeling.*", "training", "training.*"]),
    package_data={"serpent_hf": ["metrics/*/*.py"], "": ["*.md"]},
    install_requires=[
        "torch>=2.4",
        "transformers>=5.17,<6",
        "accelerate>=1.0",
        "datasets>=3.0",
        "safetensors>=0.4",
        "huggingface-hub>=1.0",
        "evaluate>=0.4.3",
        "tokenizers>=0.21",
        "pyyaml>=6.0",
        "matplotlib>=3.7",
    ],
    extras_require={
        # Build from source where no wheel fits: see README, "GPU kernels".
        "cuda": ["mamba-ssm>=2.2", "causal-conv1d>=1.4"],
        "test": ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3", "peft>=0.18"],
    },
    entry_points={"console_scripts": ["serpent-upcycle=serpent_hf.upcycle:main"]},
)
