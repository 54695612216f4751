# The one place the version lives: pyproject reads it (scikit-build-core regex) and CMake gets it from there.
__version__ = "0.1.0"
