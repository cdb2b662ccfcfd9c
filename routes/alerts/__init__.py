"""Watch and alert: notification channels, state changes of deployments, and deliveries.

models.py    channels (targets encrypted at rest), deliveries (one row per attempt) and each
             deployment's alert state; routes/models.py imports them into the routes app
channels.py  the three kinds, target rules, masking, and the channel workflows
events.py    pure-ish: a finished run -> up/down -> the deliveries of one change of state,
             and what each notification says
deliver.py   one attempt of one delivery, by email, webhook or Apprise, redacted

Queueing deliveries on the task worker is routes/tasks.py's; nothing here imports it.
"""
