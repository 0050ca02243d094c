//! Files and the formats models are read from and written to, apart from the network itself
//! (as candle keeps its readers in its core crate): `tensor_io` (safetensors with atomic writes;
//! the bottom layer), `pickle` (`torch.save` files without Python), `openai` (OpenAI and
//! open_clip checkpoints), `hub` (hub ids in the local Hugging Face cache), `weights` (a model's
//! weights in and out), `pretrained` (a model directory as a unit).

pub mod hub;
pub mod openai;
pub mod pickle;
pub mod pretrained;
pub mod tensor_io;
pub mod weights;
