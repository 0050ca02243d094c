//! Caption templates and label resolution: golden captions for every rule.

use streetclip::data::places::{resolve, LabelError, RawLabel, UnknownNames};
use streetclip::geo::Gazetteer;
use streetclip::text::caption::{Template, DEFAULT_TEMPLATE};
use streetclip::text::{CaptionConfig, Captioner, PlaceNames};

fn names(city: Option<&str>, region: Option<&str>, country: Option<&str>) -> PlaceNames {
    PlaceNames {
        city: city.map(String::from),
        region: region.map(String::from),
        country: country.map(String::from),
    }
}

#[test]
fn default_template_golden_captions() {
    let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
    let cases = [
        (names(Some("Paris"), Some("Île-de-France"), Some("France")), Some("A Street View photo close to the town of Paris in the region of Île-de-France in France.")),
        (names(None, Some("Île-de-France"), Some("France")), Some("A Street View photo in the region of Île-de-France in France.")),
        (names(Some("Paris"), None, Some("France")), Some("A Street View photo close to the town of Paris in France.")),
        (names(None, None, Some("the Netherlands")), Some("A Street View photo in the Netherlands.")),
        (names(Some("Paris"), Some("Île-de-France"), None), None),
    ];
    for (n, want) in cases {
        assert_eq!(t.render(&n).as_deref(), want, "{n:?}");
    }
}

#[test]
fn template_syntax_errors_are_reported() {
    for bad in [
        "A photo in {country",
        "A photo [in {country}",
        "A photo in {country}]",
        "A photo in {planet}.",
    ] {
        assert!(Template::parse(bad).is_err(), "{bad}");
    }
    let nested = Template::parse("X[ a[ b {city}] c {region}].").unwrap();
    assert_eq!(
        nested.render(&names(None, Some("R"), None)).unwrap(),
        "X a c R."
    );
    assert_eq!(
        nested.render(&names(Some("C"), Some("R"), None)).unwrap(),
        "X a b C c R."
    );
}

#[test]
fn seeded_dropping_and_template_sampling() {
    let cfg = CaptionConfig {
        templates: vec![DEFAULT_TEMPLATE.into(), "A photo from {country}.".into()],
        drop_city: 0.5,
        drop_region: 0.25,
        seed: 3,
    };
    let c = Captioner::new(&cfg).unwrap();
    let n = names(Some("Paris"), Some("Île-de-France"), Some("France"));
    let captions: Vec<String> = (0..2000).map(|i| c.caption(&n, 0, i).unwrap()).collect();
    let again: Vec<String> = (0..2000).map(|i| c.caption(&n, 0, i).unwrap()).collect();
    assert_eq!(captions, again, "same seed, epoch and index: same caption");
    let other_epoch: Vec<String> = (0..2000).map(|i| c.caption(&n, 1, i).unwrap()).collect();
    assert_ne!(captions, other_epoch, "a new epoch draws anew");
    let second = captions
        .iter()
        .filter(|s| s.starts_with("A photo from"))
        .count() as f64
        / 2000.0;
    let first: Vec<&String> = captions
        .iter()
        .filter(|s| s.starts_with("A Street View"))
        .collect();
    let with_city =
        first.iter().filter(|s| s.contains("town of Paris")).count() as f64 / first.len() as f64;
    let with_region =
        first.iter().filter(|s| s.contains("region of")).count() as f64 / first.len() as f64;
    assert!((second - 0.5).abs() < 0.05, "{second}");
    assert!((with_city - 0.5).abs() < 0.06, "{with_city}");
    assert!((with_region - 0.75).abs() < 0.06, "{with_region}");
    assert!(Captioner::new(&CaptionConfig {
        drop_city: 1.5,
        ..CaptionConfig::default()
    })
    .is_err());
    assert!(Captioner::new(&CaptionConfig {
        templates: vec![],
        ..CaptionConfig::default()
    })
    .is_err());
}

fn label(
    city: Option<&str>,
    region: Option<&str>,
    country: Option<&str>,
    coords: Option<(f64, f64)>,
) -> RawLabel {
    RawLabel {
        city: city.map(String::from),
        region: region.map(String::from),
        country: country.map(String::from),
        lat: coords.map(|c| c.0),
        lon: coords.map(|c| c.1),
        caption: None,
    }
}

#[test]
fn coordinates_alone_are_reverse_geocoded() {
    let g = Gazetteer::bundled().unwrap();
    let mut unknown = UnknownNames::default();
    let p = resolve(
        g,
        &label(None, None, None, Some((64.1466, -21.9426))),
        &mut unknown,
    )
    .unwrap();
    assert_eq!(
        p.names,
        names(Some("Reykjavík"), Some("Höfuðborgarsvæði"), Some("Iceland"))
    );
    // Inside big cities GeoNames' nearest place is often a district (here Sé, São Paulo).
    let p = resolve(
        g,
        &label(None, None, None, Some((-23.55, -46.63))),
        &mut unknown,
    )
    .unwrap();
    assert_eq!(
        (p.names.region.as_deref(), p.names.country.as_deref()),
        (Some("São Paulo"), Some("Brazil"))
    );
    let p = resolve(
        g,
        &label(None, None, None, Some((52.37, 4.89))),
        &mut unknown,
    )
    .unwrap();
    assert_eq!(p.names.country.as_deref(), Some("the Netherlands"));
}

#[test]
fn names_are_normalized_to_the_gazetteer() {
    let g = Gazetteer::bundled().unwrap();
    let mut unknown = UnknownNames::default();
    let p = resolve(
        g,
        &label(Some("sao paulo"), None, Some("BRA"), None),
        &mut unknown,
    )
    .unwrap();
    assert_eq!(
        p.names,
        names(Some("São Paulo"), Some("São Paulo"), Some("Brazil"))
    );
    let p = resolve(
        g,
        &label(Some("ZURICH"), None, Some("switzerland"), None),
        &mut unknown,
    )
    .unwrap();
    assert_eq!(p.names.city.as_deref(), Some("Zürich"));
    assert_eq!(unknown, UnknownNames::default());
}

#[test]
fn unknown_names_are_counted_and_left_out() {
    let g = Gazetteer::bundled().unwrap();
    let mut unknown = UnknownNames::default();
    let p = resolve(
        g,
        &label(Some("Gotham"), Some("Nowhere State"), Some("US"), None),
        &mut unknown,
    )
    .unwrap();
    assert_eq!(p.names, names(None, None, Some("the United States")));
    assert_eq!(
        unknown,
        UnknownNames {
            cities: 1,
            regions: 1
        }
    );
}

#[test]
fn a_given_country_wins_over_a_nearby_border() {
    // Coordinates in Strasbourg (France) labelled Germany: no French city is put in a German caption.
    let g = Gazetteer::bundled().unwrap();
    let p = resolve(
        g,
        &label(None, None, Some("DE"), Some((48.58, 7.75))),
        &mut UnknownNames::default(),
    )
    .unwrap();
    assert_eq!(p.names, names(None, None, Some("Germany")));
}

#[test]
fn bad_labels_are_errors() {
    let g = Gazetteer::bundled().unwrap();
    let mut u = UnknownNames::default();
    assert_eq!(
        resolve(g, &label(None, None, Some("Atlantis"), None), &mut u),
        Err(LabelError::UnknownCountry("Atlantis".into()))
    );
    assert_eq!(
        resolve(g, &label(None, None, None, Some((91.0, 0.0))), &mut u),
        Err(LabelError::BadCoordinates(91.0, 0.0))
    );
    assert_eq!(
        resolve(g, &label(None, None, None, Some((0.0, 181.0))), &mut u),
        Err(LabelError::BadCoordinates(0.0, 181.0))
    );
    let half = RawLabel {
        lat: Some(1.0),
        ..RawLabel::default()
    };
    assert_eq!(resolve(g, &half, &mut u), Err(LabelError::HalfCoordinates));
    assert_eq!(
        resolve(g, &RawLabel::default(), &mut u),
        Err(LabelError::NoLocation)
    );
}
