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

/// A date trait's value as a local date: `YYYY-MM-DD`, or an RFC 3339 time read in the person's zone.
pub fn date_of(value: &str, tz: &TimeZone) -> Option<civil::Date> {
    if let Ok(d) = value.trim().parse::<civil::Date>() {
        return Some(d);
    }
    let ms = seam_core::clock::parse_rfc3339(value)?;
    Some(zoned(ms, tz).date())
}

/// When a date trigger next fires at or after `after`: on `date` (every year on its month and day when
/// `yearly`; 29 February on the 28th in other years) at local time `minute`, plus `offset`.
pub fn next_date_time(
    date: civil::Date,
    yearly: bool,
    minute: u16,
    offset: Millis,
    tz: &TimeZone,
    after: Millis,
) -> Option<Millis> {
    let at = |d: civil::Date| -> Option<Millis> {
        let local = d.at((minute / 60) as i8, (minute % 60) as i8, 0, 0);
        Some(
            local
                .to_zoned(tz.clone())
                .ok()?
                .timestamp()
                .as_millisecond()
                + offset,
        )
    };
    if !yearly {
        return at(date).filter(|t| *t >= after);
    }
    let year = zoned(after - offset, tz).year();
    (year - 1..=year + 1).find_map(|y| {
        let day = date
            .day()
            .min(civil::Date::new(y, date.month(), 1).ok()?.days_in_month());
        at(civil::Date::new(y, date.month(), day).ok()?).filter(|t| *t >= after)
    })
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
    fn date_triggers_fire_yearly_or_once_at_the_local_time_plus_the_offset() {
        let moscow = zone("Europe/Moscow").unwrap();
        let birthday = date_of("1990-02-29", &moscow);
        assert_eq!(birthday, None, "1990 had no 29 February");
        let birthday = date_of("1992-02-29", &moscow).unwrap();
        let after = parse_rfc3339("2026-11-23T00:00:00Z").unwrap();
        // 28 February 2027 (not a leap year), 10:00 Moscow.
        assert_eq!(
            next_date_time(birthday, true, 600, 0, &moscow, after),
            Some(parse_rfc3339("2027-02-28T07:00:00Z").unwrap())
        );
        let signed_up = date_of("2026-11-20T21:30:00Z", &moscow).unwrap(); // 00:30 on the 21st in Moscow
        let three_days = 3 * 86_400_000;
        assert_eq!(
            next_date_time(signed_up, false, 600, three_days, &moscow, after),
            Some(parse_rfc3339("2026-11-24T07:00:00Z").unwrap())
        );
        assert_eq!(
            next_date_time(signed_up, false, 600, 0, &moscow, after),
            None,
            "in the past"
        );
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
