"""Adapters that turn external task suites into text tasks (``textenv.text_task``): reasoning-gym
(``textenv.suites.reasoning_gym``, ``prompts="rg:NAME"``) and TextArena
(``textenv.suites.textarena``, ``task="ta:GAME-v0"``). Each imports its library lazily, so the
extra (``pip install -e ".[tasks]"``) is needed only when it is used."""
