"""A/B experiments on the served list: arms with their own configuration, stable
assignment by user, exposures and attributed outcomes, and the statistics to decide.

    schema.py      the API's shapes (an experiment, its arms, an arm's config)
    assignment.py  which arm a user is in: a stable hash of (experiment, user)
    database.py    experiments, exposures and outcomes beside the engine's tables
    stats.py       rates with intervals, differences, p-values, sample-ratio mismatch
    service.py     the running experiment for a request; attribution; reports
"""
