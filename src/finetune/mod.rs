//! Downstream fine-tuning for classification tasks (`streetclip finetune`): labelled images in
//! an ImageFolder tree or a manifest, class names turned into captions, and one or several
//! methods compared on the same split — `zero_shot`, `linear_probe`, `contrastive` (FLYP:
//! the main trainer on class captions), `classifier` (a head initialised from the class
//! captions, cross-entropy) — with WiSE-FT weight interpolation at export; and `geocells`,
//! geolocation by a head over geocells with retrieval refinement (`geocells`).

pub mod geocells;
pub mod head;
pub mod logistic;
pub mod methods;
pub mod split;
pub mod wise;
