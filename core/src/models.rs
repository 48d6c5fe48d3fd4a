//! Model families and their configs. This session ships the built-in presets; the
//! trainable GPT-2 and Llama-family implementations come with the model issue.

pub mod presets;
