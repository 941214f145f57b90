"""Placement: which devices a profile loads on (plan), the policy that decides (policy), and its effects under the lock (placer)."""
