"""A user's text task, defined outside the project: a number-guessing game that answers
"higher" / "lower" (the protocol of textenv.text_task). Used by tests/test_env_tasks.py, also by
name ("guess_task:GuessNumber") in trainer configs."""

from __future__ import annotations

import numpy as np


class GuessNumber:
    """Guess a number in [low, high]. Each wrong guess costs ``step_cost`` and gets a hint; the
    right one pays 1.0 and ends the episode; ``max_guesses`` wrong guesses end it too. The
    train split draws odd targets, the test split even ones."""

    name = "guess"

    def __init__(self, low: int = 1, high: int = 8, max_guesses: int = 4, step_cost: float = 0.1):
        self.low, self.high, self.max_guesses, self.step_cost = low, high, max_guesses, step_cost

    def reset(self, rng: np.random.Generator, split: str) -> tuple[str, dict]:
        choices = [n for n in range(self.low, self.high + 1) if (n % 2 == 1) == (split == "train")]
        target = int(choices[int(rng.integers(len(choices)))])
        return f"Guess {self.low}-{self.high}:", {"target": target, "guesses": []}

    def respond(self, state: dict, text: str) -> tuple[str | None, float, bool]:
        state["guesses"].append(text)
        try:
            guess = int(text.strip())
        except ValueError:
            guess = None
        if guess == state["target"]:
            return None, 1.0, True
        if len(state["guesses"]) >= self.max_guesses:
            return None, -self.step_cost, True
        hint = "a number" if guess is None else "higher" if guess < state["target"] else "lower"
        return f" {hint}:", -self.step_cost, False

    def reference(self, state: dict) -> str:
        return str(state["target"])

    def demonstration(self, rng: np.random.Generator, split: str):
        """Binary search, played through this task: (prompt, [(guess, reply), ...])."""
        prompt, state = self.reset(rng, split)
        low, high, turns = self.low, self.high, []
        while True:
            guess = (low + high) // 2
            reply, _, done = self.respond(state, str(guess))
            turns.append((str(guess), reply))
            if done:
                return prompt, turns
            low, high = (guess + 1, high) if "higher" in reply else (low, guess - 1)
