//! Checks of command-line values, so a wrong one is refused by name before
//! anything runs (instead of a clamp, or a constraint error from
//! PostgreSQL).

/// `value` parsed, refused with `says` when below `least`.
fn at_least<T>(value: &str, least: T, says: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd,
    T::Err: std::fmt::Display,
{
    match value.parse::<T>() {
        Ok(n) if n < least => Err(says.into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A count that must be at least 1.
pub fn at_least_one(value: &str) -> Result<usize, String> {
    at_least(value, 1, "must be at least 1")
}

/// A count or amount that must be 0 or more.
pub fn not_negative(value: &str) -> Result<i64, String> {
    at_least(value, 0, "must be 0 or more")
}

/// Units of a product's stock or a coupon's quantity: 0 to
/// [`MAX_UNITS`](crate::domain::messages::MAX_UNITS).
pub fn units(value: &str) -> Result<i64, String> {
    let n = at_least(value, 0, "must be 0 or more")?;
    let most = crate::domain::messages::MAX_UNITS;
    if n > most {
        return Err(format!("must be at most {most}"));
    }
    Ok(n)
}

/// An id: a positive i64.
pub fn positive_id(value: &str) -> Result<i64, String> {
    at_least(value, 1, "must be a positive id")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::loadgen::LoadgenArgs;
    use super::super::seed::SeedArgs;

    #[derive(Parser)]
    struct Seed {
        #[command(flatten)]
        args: SeedArgs,
    }

    #[derive(Parser)]
    struct Dlq {
        #[command(subcommand)]
        command: super::super::dlq::DlqCommand,
    }

    #[derive(Parser)]
    struct Loadgen {
        #[command(flatten)]
        args: LoadgenArgs,
    }

    fn refusal<P: Parser>(args: &[&str]) -> String {
        match P::try_parse_from(std::iter::once("stampede").chain(args.iter().copied())) {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn wrong_counts_and_ids_are_refused_by_name() {
        for (args, says) in [
            (
                &["--requests", "0"][..],
                "--requests <REQUESTS>': must be at least 1",
            ),
            (&["--users", "0"], "--users <USERS>': must be at least 1"),
            (
                &["--products", "0"],
                "--products <PRODUCTS>': must be at least 1",
            ),
            (&["--rate", "0"], "--rate <RATE>': must be at least 1"),
            (
                &["--concurrency", "0"],
                "--concurrency <CONCURRENCY>': must be at least 1",
            ),
            (&["--stock=-5"], "--stock <STOCK>': must be 0 or more"),
            (
                &["--stock", "1000000000001"],
                "--stock <STOCK>': must be at most 1000000000000",
            ),
        ] {
            let error = refusal::<Loadgen>(args);
            assert!(error.contains(says), "{args:?}: {error}");
        }
        for (args, says) in [
            (&["--users=-1"][..], "--users <USERS>': must be 0 or more"),
            (
                &["--coupon-stock=-1"],
                "--coupon-stock <COUPON_STOCK>': must be 0 or more",
            ),
            (&["--price=-1"], "--price <PRICE>': must be 0 or more"),
            (
                &["--coupon-stock", "9223372036854775807"],
                "--coupon-stock <COUPON_STOCK>': must be at most 1000000000000",
            ),
            (
                &["--first-user-id", "0"],
                "--first-user-id <FIRST_USER_ID>': must be a positive id",
            ),
        ] {
            let error = refusal::<Seed>(args);
            assert!(error.contains(says), "{args:?}: {error}");
        }
        for args in [
            &["list", "--flow", "coupon", "--limit", "0"][..],
            &["replay", "--flow", "coupon", "--limit", "0"],
            &["history", "--limit", "0"],
            &["history", "--limit=-1"],
        ] {
            let error = refusal::<Dlq>(args);
            assert!(error.contains("--limit <LIMIT>'"), "{args:?}: {error}");
        }
        assert!(Seed::try_parse_from(["stampede", "--users", "0", "--coupon-stock", "0"]).is_ok());
        assert!(Loadgen::try_parse_from(["stampede", "--stock", "0", "--rate", "1"]).is_ok());
    }
}
