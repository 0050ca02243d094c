//! A photo's GPS position and capture time from its EXIF tags (JPEG, PNG, WebP, HEIF), for
//! turning geotagged photos into a manifest.

use anyhow::{bail, Context, Result};
use exif::{In, Reader, Tag, Value};
use std::path::Path;

/// Where and when a photo was taken, as its EXIF says.
#[derive(Debug, Clone, PartialEq)]
pub struct Geotag {
    /// Degrees north (WGS 84, as GPS receivers record).
    pub lat: f64,
    /// Degrees east.
    pub lon: f64,
    /// DateTimeOriginal as ISO 8601 (`2024-05-01T14:03:22`, with `+02:00` when
    /// OffsetTimeOriginal gives the zone), if present.
    pub captured: Option<String>,
}

/// The photo's geotag; `None` when it has no EXIF or no GPS position in it; an error for a file
/// that cannot be read or a GPS position that is malformed or out of range.
pub fn geotag(path: &Path) -> Result<Option<Geotag>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let exif = match Reader::new().read_from_container(&mut std::io::BufReader::new(file)) {
        Ok(exif) => exif,
        Err(exif::Error::NotFound(_) | exif::Error::BlankValue(_)) => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the EXIF of {}", path.display()))
        }
    };
    let field = |tag| exif.get_field(tag, In::PRIMARY).map(|f| &f.value);
    let (Some(lat), Some(lon)) = (field(Tag::GPSLatitude), field(Tag::GPSLongitude)) else {
        return Ok(None);
    };
    let signed = |value: &Value, reference: Option<&Value>, negative: u8, what: &str| {
        let degrees = degrees(value).with_context(|| {
            format!(
                "{}: GPS {what} is not degrees, minutes, seconds",
                path.display()
            )
        })?;
        let flip = matches!(reference, Some(Value::Ascii(r)) if r.first().and_then(|r| r.first()) == Some(&negative));
        Ok::<f64, anyhow::Error>(if flip { -degrees } else { degrees })
    };
    let lat = signed(lat, field(Tag::GPSLatitudeRef), b'S', "latitude")?;
    let lon = signed(lon, field(Tag::GPSLongitudeRef), b'W', "longitude")?;
    if !(lat.abs() <= 90.0 && lon.abs() <= 180.0) {
        bail!(
            "{}: GPS position ({lat}, {lon}) is out of range",
            path.display()
        );
    }
    let text = |tag| match field(tag) {
        Some(Value::Ascii(v)) => v
            .first()
            .map(|s| String::from_utf8_lossy(s).trim().to_string()),
        _ => None,
    };
    let captured = text(Tag::DateTimeOriginal)
        .and_then(|t| iso8601(&t))
        .map(|t| t + &text(Tag::OffsetTimeOriginal).unwrap_or_default());
    Ok(Some(Geotag { lat, lon, captured }))
}

/// Degrees of EXIF's three rationals (degrees, minutes, seconds).
fn degrees(value: &Value) -> Option<f64> {
    let Value::Rational(parts) = value else {
        return None;
    };
    let [d, m, s] = parts.as_slice() else {
        return None;
    };
    let total = d.to_f64() + m.to_f64() / 60.0 + s.to_f64() / 3600.0;
    total.is_finite().then_some(total)
}

/// EXIF's `YYYY:MM:DD HH:MM:SS` as `YYYY-MM-DDTHH:MM:SS`; `None` for blank or malformed values.
fn iso8601(exif: &str) -> Option<String> {
    let b = exif.as_bytes();
    let shape = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 | 13 | 16 => *c == b':',
            10 => *c == b' ',
            _ => c.is_ascii_digit(),
        });
    shape.then(|| {
        format!(
            "{}-{}-{}T{}",
            &exif[..4],
            &exif[5..7],
            &exif[8..10],
            &exif[11..]
        )
    })
}

#[cfg(test)]
mod tests {
    use super::iso8601;

    #[test]
    fn exif_times_become_iso_8601_and_blank_ones_none() {
        assert_eq!(
            iso8601("2024:05:01 14:03:22").as_deref(),
            Some("2024-05-01T14:03:22")
        );
        assert_eq!(iso8601("    :  :     :  :  "), None);
        assert_eq!(iso8601("2024-05-01 14:03:22"), None);
    }
}
