"""Named mutations of the console's data, one module per noun.

The admin, the commands and the importer change teams, memberships, deployments, route overrides
and keys only through these keyword-only functions, so that validation, the deployment's
optimistic-locking version and the audit trail are handled in one place. Who acts comes from
routes.context, never from a parameter.
"""
