//! Helpers every gRPC API of the mesh shares: timestamps and keyset pagination with opaque
//! page tokens.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A refused request field; services turn it into INVALID_ARGUMENT naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field path.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

impl From<FieldError> for tonic::Status {
    fn from(e: FieldError) -> Self {
        tonic::Status::invalid_argument(format!("{}: {}", e.field, e.reason))
    }
}

/// prost Timestamp from chrono.
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// chrono from an optional prost Timestamp, naming `field` when it is out of range.
pub fn from_timestamp(
    field: &'static str,
    t: Option<prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, FieldError> {
    let bad = || FieldError { field, reason: "out of range".to_owned() };
    t.map(|t| {
        let nanos = u32::try_from(t.nanos).map_err(|_| bad())?;
        DateTime::from_timestamp(t.seconds, nanos).ok_or_else(bad)
    })
    .transpose()
}

/// Largest page any list returns.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 20;

/// A validated page request: newest first, strictly after the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Rows to return.
    pub size: u32,
    /// `(created_at, id)` of the last row of the previous page.
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

impl Page {
    /// Checks `page_size` (0 means the default) and decodes `page_token`.
    pub fn parse(page_size: u32, page_token: &str) -> Result<Self, FieldError> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n @ 1..=MAX_PAGE_SIZE => n,
            n => {
                return Err(FieldError {
                    field: "page_size",
                    reason: format!("must be between 1 and {MAX_PAGE_SIZE}, got {n}"),
                });
            }
        };
        let after = if page_token.is_empty() { None } else { Some(decode_cursor(page_token)?) };
        Ok(Self { size, after })
    }

    /// Rows to fetch: one more than the page, to know whether another page follows.
    pub fn fetch(&self) -> u32 {
        self.size + 1
    }

    /// Trims the extra row and returns the token of the next page (empty on the last).
    pub fn finish<T>(&self, rows: &mut Vec<T>, key: impl Fn(&T) -> (DateTime<Utc>, Uuid)) -> String {
        let size = self.size as usize;
        let more = rows.len() > size;
        rows.truncate(size);
        match rows.last() {
            Some(last) if more => {
                let (at, id) = key(last);
                hex::encode(format!("{}|{id}", at.timestamp_micros()))
            }
            _ => String::new(),
        }
    }
}

fn decode_cursor(token: &str) -> Result<(DateTime<Utc>, Uuid), FieldError> {
    let bad =
        || FieldError { field: "page_token", reason: "not a token from a previous response".to_owned() };
    let text = String::from_utf8(hex::decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    let (micros, id) = text.split_once('|').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    Ok((DateTime::from_timestamp_micros(micros).ok_or_else(bad)?, Uuid::parse_str(id).map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip_and_bad_input_names_the_field() {
        let page = Page::parse(2, "").unwrap();
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let ids = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
        let mut rows: Vec<(DateTime<Utc>, Uuid)> = ids.iter().map(|i| (at, *i)).collect();
        let token = page.finish(&mut rows, |r| *r);
        assert_eq!(rows.len(), 2);
        assert_eq!(Page::parse(2, &token).unwrap().after, Some((at, ids[1])));
        let mut last: Vec<(DateTime<Utc>, Uuid)> = vec![(at, ids[2])];
        assert_eq!(page.finish(&mut last, |r| *r), "", "no token on the last page");
        assert_eq!(Page::parse(101, "").unwrap_err().field, "page_size");
        assert_eq!(Page::parse(0, "zz").unwrap_err().field, "page_token");
        assert_eq!(Page::parse(0, "").unwrap().size, DEFAULT_PAGE_SIZE);
    }
}
