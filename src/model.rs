//! The paper's GPT models and their presets (filled in by the training work).
