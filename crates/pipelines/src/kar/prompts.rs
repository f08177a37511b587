//! KAR's factorized prompts for MovieLens: reasoning about a user's preferences
//! along the scenario factors, and facts about a movie along the same factors.

use llmrec_data::loaders::{Movie, Rated, UserProfile};
use llmrec_llm::Message;

/// Version of the prompt wording; part of the knowledge artifact's key.
pub const PROMPT_VERSION: u32 = 1;

/// The scenario factors of movies.
pub const FACTORS: [&str; 9] = [
    "genre",
    "director/actors",
    "time period/country",
    "character",
    "plot/theme",
    "mood/tone",
    "critical acclaim/award",
    "production quality",
    "soundtrack",
];

const ARTICLES: [&str; 14] = [
    "The", "A", "An", "Les", "La", "Le", "L'", "Il", "Das", "Der", "Die", "El", "Los", "Las",
];

/// A title as people write it: "Matrix, The (1999)" → "The Matrix (1999)", also
/// with an alternative title in parentheses ("City of Lost Children, The (Cité des
/// enfants perdus, La) (1995)" → "The City of Lost Children (Cité des enfants
/// perdus, La) (1995)"). Other titles are returned unchanged.
pub fn normalise_title(title: &str) -> String {
    let title = title.trim();
    // The main title ends at the first " (" (the year, or an alternative title).
    let (main, rest) = match title.find(" (") {
        Some(i) => (&title[..i], &title[i..]),
        None => (title, ""),
    };
    if let Some(i) = main.rfind(", ") {
        let article = &main[i + 2..];
        if ARTICLES.contains(&article) {
            let sep = if article.ends_with('\'') { "" } else { " " };
            return format!("{article}{sep}{}{rest}", &main[..i]);
        }
    }
    title.to_string()
}

fn factor_list() -> String {
    FACTORS.join(", ")
}

/// The user's prompt in two parts: the context (profile and prompt-only ratings),
/// which the encoder also reads, and the question.
pub fn user_prompt(
    profile: Option<&UserProfile>,
    history: &[Rated],
    title: &dyn Fn(u32) -> Option<String>,
) -> (String, String) {
    let who = match profile {
        Some(p) => format!(
            "The user is {} aged {}, working as {}.",
            if p.gender == 'F' { "a woman" } else { "a man" },
            p.age_band(),
            p.occupation_name()
        ),
        None => "Nothing is known about the user's profile.".to_string(),
    };
    let rated: Vec<String> = history
        .iter()
        .map(|r| {
            let t = title(r.movie).unwrap_or_else(|| format!("movie {}", r.movie));
            let s = if r.stars == 1 { "star" } else { "stars" };
            format!("\"{t}\", {} {s};", r.stars)
        })
        .collect();
    let context = format!(
        "{who} They rated these movies (1 to 5 stars), oldest first: {}",
        rated.join(" ")
    );
    let question = format!(
        "Analyze the user's preferences about movies along these factors: {}. \
         For each factor, give a reason drawn from the rated movies.",
        factor_list()
    );
    (context, question)
}

/// The item's prompt: introduce the movie and describe it along the factors.
pub fn item_prompt(movie: &Movie) -> String {
    format!(
        "Introduce the movie {} and describe its attributes along these factors: {}.",
        normalise_title(&movie.title),
        factor_list()
    )
}

/// Chat messages of a prompt.
pub fn messages(prompt: &str) -> Vec<Message> {
    vec![Message::user(prompt)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_normalised() {
        assert_eq!(normalise_title("Matrix, The (1999)"), "The Matrix (1999)");
        assert_eq!(
            normalise_title("Few Good Men, A (1992)"),
            "A Few Good Men (1992)"
        );
        assert_eq!(
            normalise_title("City of Lost Children, The (Cité des enfants perdus, La) (1995)"),
            "The City of Lost Children (Cité des enfants perdus, La) (1995)"
        );
        assert_eq!(
            normalise_title("Apartment, L' (1996)"),
            "L'Apartment (1996)"
        );
        assert_eq!(normalise_title("Toy Story (1995)"), "Toy Story (1995)");
        assert_eq!(
            normalise_title("Crouching Tiger, Hidden Dragon (2000)"),
            "Crouching Tiger, Hidden Dragon (2000)"
        );
    }

    #[test]
    fn prompts_hold_the_factors_history_and_profile() {
        let p = UserProfile {
            gender: 'F',
            age: 25,
            occupation: 12,
        };
        let hist = [Rated { movie: 1, stars: 5 }, Rated { movie: 2, stars: 1 }];
        let title = |m: u32| (m == 1).then(|| "The Matrix (1999)".to_string());
        let (ctx, q) = user_prompt(Some(&p), &hist, &title);
        assert!(ctx.contains("a woman aged 25-34"), "{ctx}");
        assert!(
            ctx.contains("\"The Matrix (1999)\", 5 stars; \"movie 2\", 1 star;"),
            "{ctx}"
        );
        for f in FACTORS {
            assert!(q.contains(f), "{q}");
        }
        let m = Movie {
            title: "Matrix, The (1999)".into(),
            genres: vec!["Action".into()],
        };
        let ip = item_prompt(&m);
        assert!(
            ip.contains("The Matrix (1999)") && ip.contains("soundtrack"),
            "{ip}"
        );
    }
}
