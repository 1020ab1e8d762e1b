"""Packaging; the metadata is in setup.cfg. Only what setup.cfg cannot say lives here: the recipes stay at
recipes/ in the repository and ship inside the package as ``hf_selfish/recipes`` (with the accelerate configs
they mention), so `hf-selfish compare tinyshakespeare_cpu` finds them by name from an installed wheel."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["hf_selfish", "hf_selfish.*"])
    + ["hf_selfish.recipes", "hf_selfish.recipes.accelerate", "hf_selfish.recipes.deepspeed"]
    + ["hf_selfish.recipes.axolotl"],
    package_dir={"hf_selfish.recipes": "recipes"},
)
