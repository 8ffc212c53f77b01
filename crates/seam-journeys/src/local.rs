//! Local times of day in a person's time zone: quiet hours, "wait until 10:00", schedules.

use jiff::civil;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use seam_core::Millis;

/// A time zone by its IANA name (`Europe/Moscow`, `UTC`).
pub fn zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name)
        .map_err(|_| format!("`{name}` is not a time zone name such as `Europe/Berlin`"))
}

/// `HH:MM` (24-hour clock) as minutes after midnight.
pub fn parse_time_of_day(text: &str) -> Result<u16, String> {
    let bad = || format!("`{text}` is not a time of day as HH:MM (24-hour clock, as in 09:30)");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

pub fn format_time_of_day(minute: u16) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

fn zoned(at: Millis, tz: &TimeZone) -> jiff::Zoned {
    Timestamp::from_millisecond(at)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_zoned(tz.clone())
}

/// Minutes after local midnight at `at`.
pub fn minute_of_day(at: Millis, tz: &TimeZone) -> u16 {
    let z = zoned(at, tz);
    (z.hour() as u16) * 60 + z.minute() as u16
}

/// The first instant at or after `at` when the local clock shows `minute` (on a day whose clocks skip that
/// time, the instant after the gap).
pub fn next_time_of_day(at: Millis, tz: &TimeZone, minute: u16) -> Millis {
    let z = zoned(at, tz);
    let mut date = z.date();
    for _ in 0..3 {
        let local = date.at((minute / 60) as i8, (minute % 60) as i8, 0, 0);
        if let Ok(candidate) = local.to_zoned(tz.clone()) {
            let ms = candidate.timestamp().as_millisecond();
            if ms >= at {
                return ms;
            }
        }
        date = date.tomorrow().unwrap_or(date);
    }
    at
}

/// The local date at `at` as (month, day), for yearly dates such as birthdays.
pub fn month_day(at: Millis, tz: &TimeZone) -> (i8, i8) {
    let d: civil::Date = zoned(at, tz).date();
    (d.month(), d.day())
}

#[cfg(test)]
mod tests {
    use super::*;
    use seam_core::clock::parse_rfc3339;

    #[test]
    fn times_of_day_parse_and_print_back() {
        assert_eq!(parse_time_of_day("09:30"), Ok(570));
        assert_eq!(format_time_of_day(570), "09:30");
        for bad in ["24:00", "9", "09:3", "ab:cd", "10:60", ""] {
            assert!(parse_time_of_day(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_next_local_time_of_day_is_found_in_the_persons_zone() {
        let moscow = zone("Europe/Moscow").unwrap();
        let at = parse_rfc3339("2026-11-23T20:00:00Z").unwrap(); // 23:00 in Moscow
        assert_eq!(minute_of_day(at, &moscow), 23 * 60);
        let next = next_time_of_day(at, &moscow, 9 * 60);
        assert_eq!(next, parse_rfc3339("2026-11-24T06:00:00Z").unwrap());
        assert_eq!(
            next_time_of_day(next, &moscow, 9 * 60),
            next,
            "at the time itself"
        );
        assert!(zone("Mars/Olympus").is_err());
    }

    #[test]
    fn a_time_skipped_by_daylight_saving_is_reached_after_the_gap() {
        let berlin = zone("Europe/Berlin").unwrap();
        // 2026-03-29: clocks go from 02:00 to 03:00.
        let at = parse_rfc3339("2026-03-28T23:00:00Z").unwrap();
        let next = next_time_of_day(at, &berlin, 2 * 60 + 30);
        assert_eq!(next, parse_rfc3339("2026-03-29T01:30:00Z").unwrap());
    }
}
