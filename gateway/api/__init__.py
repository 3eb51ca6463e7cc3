"""The HTTP routes: the OpenAI adapter on the request pipeline (chat.py), and the admin API
under /admin (admin.py: teams, keys, the spend log; budgets.py: budgets, usage, reports).

Import from the submodules; this module stays empty so that importing one loads only it.
"""
