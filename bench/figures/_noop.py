"""A function that does nothing, for trio-parallel's ``run_sync``: in a module that imports
nothing, so that unpickling it in a fresh worker costs that worker no import of ours."""


def noop() -> None:
    return None
