"""Scoring: the discriminator (a Bradley–Terry reward model) and its Ray Serve endpoint.

Nothing heavy is imported here: ``rayalign.scoring.discriminator`` loads torch and transformers,
``rayalign.scoring.serve`` loads Ray Serve and FastAPI.
"""
