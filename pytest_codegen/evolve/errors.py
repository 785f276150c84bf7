"""The one exception type of the search: a run that cannot go on as configured."""


class EvolveError(ValueError):
    """Bad options, too few problems, an unusable difficulty file, an OUT of another search."""
