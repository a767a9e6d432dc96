// Keeps the model libraries non-empty while their parts land.
