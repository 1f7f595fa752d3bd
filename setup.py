"""Packaging for training_pipeline; every value comes from settings.ini (nbdev 2 layout)."""
import shlex
from configparser import ConfigParser

import setuptools

settings = ConfigParser(delimiters=["="])
settings.read("settings.ini", encoding="utf-8")
cfg = settings["DEFAULT"]


def requirements(key):
    return shlex.split(cfg.get(key, ""))


spdx_licenses = {"apache2": "Apache-2.0"}

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=spdx_licenses[cfg["license"]],
    url=cfg["git_url"],
    keywords=cfg["keywords"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Natural Language :: English",
        f"Programming Language :: Python :: {cfg['min_python']}",
    ],
    packages=setuptools.find_packages(include=[cfg["lib_path"], cfg["lib_path"] + ".*"]),
    include_package_data=True,
    package_data={cfg["lib_path"]: ["notebooks/*.ipynb", "ui_assets/*", "export_assets/*"]},
    install_requires=requirements("requirements"),
    # every `<name>_requirements` of settings.ini is the extra `<name>`: dev, datasets, bench, shards, s3, gcs, hf
    extras_require={key.removesuffix("_requirements"): requirements(key) for key in cfg if key.endswith("_requirements")
                    and key != "requirements"},
    python_requires=">=" + cfg["min_python"],
    zip_safe=False,
    entry_points={
        "console_scripts": cfg.get("console_scripts", "").split(),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
)
