"""Online RL: the rollout helpers, the shared step (`trainer`), and one module per algorithm
family (`ppo`, `grpo` (grpo / rloo), `grao`)."""
