"""Verification of deployments, shaped like routes/nginx/: data, a pure step, one seam, then I/O.

checks.py      the check table as data; each check's own judgement sits in its entry
outcomes.py    pure: one answer (or certificate) -> a redacted CheckOutcome
diagnoses.py   what a failure means as a code plus parameters, and its words in the reader's
               language (render); which code applies, keyed by check
causes.py      a run's failures grouped into root causes, each with its fix, stored on the run
http.py        the one HTTP seam: bounded requests, redaction, who answered
destinations.py where keys may go: the origins an owner confirmed, and who may move them
runner.py      one check through the seam; a run's checks on a bounded pool, with its deadline
               and the management-key lane
runs.py        stored runs: create, claim, execute, sweep stale ones, prune, schedule, probe keys

Queueing runs on the task worker is routes/tasks.py's; nothing here imports it.
"""
