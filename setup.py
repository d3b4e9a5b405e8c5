from setuptools import find_packages, setup


def read_version():
    scope = {}
    with open('mmbeit/version.py') as f:
        exec(f.read(), scope)
    return scope['__version__']


def read_requirements(path):
    with open(path) as f:
        return [line.split('#', 1)[0].strip() for line in f if line.split('#', 1)[0].strip()]


setup(
    name='mmbeit',
    version=read_version(),
    description='BEiT / BEiT v2 / VQ-KD: tokenizer training, masked image modeling '
                'pretraining and transfer, on MMEngine',
    long_description=open('README.md').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    python_requires='>=3.9',
    # mmcv (with compiled ops) and the torch/torchvision pair are installed by
    # tools/install.sh; listing them here would let pip pick builds that do not work.
    install_requires=read_requirements('requirements/runtime.txt'),
    extras_require={
        'tests': read_requirements('requirements/tests.txt'),
        # optional features (also in the test requirements, so CI covers them)
        'export': ['onnx', 'onnxruntime', 'onnxscript'],
        'tensorboard': ['tensorboard'],
    },
    license='Apache-2.0',
    license_files=['LICENSE', 'NOTICE'],
)
