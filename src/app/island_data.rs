//! What an island starts from, handed from the server's render to the browser's hydration
//! without Leptos's island props. Those are JSON, and serde_json with everything it drags in
//! (its errors format floats) was about a fifth of a bundle (BENCHMARKS.md, row 6). Here the
//! page writes the island's data beside it as an attribute, `data-<name>`, in postcard (the
//! format of the server functions' answers too), hex-encoded; the island reads it back in the
//! browser, and on the server takes it from the context the page provided.

use serde::{de::DeserializeOwned, Serialize};

/// The attribute's value for `value`: postcard bytes as lowercase hex.
pub fn encode<T: Serialize>(value: &T) -> String {
    let bytes = postcard::to_allocvec(value).unwrap_or_default();
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    text
}

/// What [`encode`] wrote, or `None` for anything else.
pub fn decode<T: DeserializeOwned>(text: &str) -> Option<T> {
    let digit = |c: u8| HEX.iter().position(|h| *h == c).map(|d| d as u8);
    let bytes = text
        .as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [high, low] => Some(digit(*high)? << 4 | digit(*low)?),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()?;
    postcard::from_bytes(&bytes).ok()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The island's data: on the server, what the page put in the context; in the browser, what
/// the page wrote in the `data-<name>` attribute beside the island.
pub fn read<T: DeserializeOwned + Clone + 'static>(name: &str) -> Option<T> {
    #[cfg(feature = "hydrate")]
    {
        let element = leptos::prelude::document()
            .query_selector(&format!("[data-{name}]"))
            .ok()??;
        decode(&element.get_attribute(&format!("data-{name}"))?)
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = name;
        leptos::prelude::use_context::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::protocol::{MachineInfo, PhaseView};

    #[test]
    fn an_islands_data_goes_through_its_attribute_and_nothing_else_does() {
        let info = MachineInfo {
            id: "0123456789abcd".into(),
            region: Some("syd".into()),
            city: Some("Sydney".into()),
            edge_region: None,
            edge_city: None,
            distance_km: Some(16_600),
            launcher_url: Some("https://flyby.fly.dev".into()),
            phase: PhaseView::Showing { seconds_left: 30 },
            boot: Some("q3.c40.h130".into()),
        };
        let text = encode(&info);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(decode::<MachineInfo>(&text), Some(info));
        for bad in [
            "",
            "0",
            "zz",
            "0g",
            "ABCD",
            "<script>",
            &text[..text.len() - 2],
        ] {
            assert_eq!(decode::<MachineInfo>(bad), None, "{bad:?}");
        }
    }
}
