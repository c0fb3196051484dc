"""The OpenAI-compatible face: the `openai` SDK's files, models and fine-tuning jobs
(routes.py), its shapes (schemas.py), the conversion to and from the core's (mapping.py)
and its error answers (errors.py). docs/openai.md says what differs from OpenAI's service.
"""
