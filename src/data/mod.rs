//! Corpus loading, tokenizer training and the memory-mapped token stream (filled in by the training work).
