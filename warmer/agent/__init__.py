"""The in-container agent: probes the environment, runs a warm-up engine, reports on stdout.

It runs inside the user's image from a read-only mount of this package, under whatever
Python the image has (3.9 or newer), so it imports nothing third-party at module level and
nothing from warmer outside this package except `warmer.caches`. Protocol: see
`warmer.agent.report` and docs/architecture.md ("Agent protocol").
"""
