//! LLM-Rec's four prompting strategies, eight prompts in all, each asking the LLM
//! to rewrite an item's own description (title, genres or categories, brand).

use serde::{Deserialize, Serialize};

use crate::kar::prompts::normalise_title;
use llmrec_core::ItemText;

/// Version of the prompt wording; part of the augmentation artifact's key.
pub const PROMPT_VERSION: u32 = 1;

/// A prompting strategy: which augmented texts a table row adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Paraphrase, tags, broader characteristics.
    Basic,
    /// The same three, written to recommend the item.
    Rec,
    /// What the item shares with its most important co-engaged neighbours.
    Eng,
    /// The engagement prompt, written to recommend the item.
    RecEng,
}

impl Strategy {
    /// Every strategy, in the paper's order.
    pub const ALL: [Strategy; 4] = [
        Strategy::Basic,
        Strategy::Rec,
        Strategy::Eng,
        Strategy::RecEng,
    ];

    /// The prompts of the strategy.
    pub fn prompts(self) -> &'static [PromptKind] {
        match self {
            Strategy::Basic => &[PromptKind::Para, PromptKind::Tag, PromptKind::Infer],
            Strategy::Rec => &[
                PromptKind::RecPara,
                PromptKind::RecTag,
                PromptKind::RecInfer,
            ],
            Strategy::Eng => &[PromptKind::Eng],
            Strategy::RecEng => &[PromptKind::RecEng],
        }
    }

    /// The name in configs and tables (`basic`, `rec`, `eng`, `rec-eng`).
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Basic => "basic",
            Strategy::Rec => "rec",
            Strategy::Eng => "eng",
            Strategy::RecEng => "rec-eng",
        }
    }

    /// Whether the prompts need the item's engagement neighbours.
    pub fn needs_neighbors(self) -> bool {
        matches!(self, Strategy::Eng | Strategy::RecEng)
    }
}

/// One of the eight prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptKind {
    /// Paraphrase the description, adding nothing.
    Para,
    /// Summarise it with tags.
    Tag,
    /// Describe the item at a broader, categorical level.
    Infer,
    /// Paraphrase, to recommend the item.
    RecPara,
    /// Tags, to recommend the item.
    RecTag,
    /// Broader characteristics, to recommend the item.
    RecInfer,
    /// What the item shares with its neighbours.
    Eng,
    /// The shared characteristics, to recommend the item.
    RecEng,
}

impl PromptKind {
    /// The name in artifacts (`para`, `rec-tag`, ...).
    pub fn name(self) -> &'static str {
        match self {
            PromptKind::Para => "para",
            PromptKind::Tag => "tag",
            PromptKind::Infer => "infer",
            PromptKind::RecPara => "rec-para",
            PromptKind::RecTag => "rec-tag",
            PromptKind::RecInfer => "rec-infer",
            PromptKind::Eng => "eng",
            PromptKind::RecEng => "rec-eng",
        }
    }
}

/// An item's description as the prompts quote it: the title as people write it,
/// then genres or categories and the brand.
pub fn describe(item: &ItemText) -> String {
    ItemText {
        title: normalise_title(&item.title),
        ..item.clone()
    }
    .to_text()
}

/// The prompt of `kind` for an item described as `item`, with the descriptions of
/// its engagement neighbours (used by the two engagement prompts only; without
/// neighbours they ask about the item alone).
pub fn prompt(kind: PromptKind, item: &str, neighbors: &[String]) -> String {
    let about = format!("Here is the description of an item: \"{item}\".");
    let quoted = || {
        neighbors
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join("; ")
    };
    match kind {
        PromptKind::Para => format!(
            "{about} Paraphrase this description in your own words. Do not add any \
             information it does not contain."
        ),
        PromptKind::Tag => format!("{about} Summarise it as a short list of descriptive tags."),
        PromptKind::Infer => format!(
            "{about} Describe the kind of item this is at a broader, categorical level: \
             what sort of item it is and what it is like."
        ),
        PromptKind::RecPara => format!(
            "{about} Rewrite this description so that it would make people want it: \
             what would you say to recommend this item to others?"
        ),
        PromptKind::RecTag => format!(
            "{about} Which tags would you use to recommend this item to others? Answer \
             with a short list of tags."
        ),
        PromptKind::RecInfer => format!(
            "{about} Recommend this item to others, focusing on its characteristics at a \
             broader, categorical level."
        ),
        PromptKind::Eng if neighbors.is_empty() => {
            format!("{about} Summarise what makes this item appealing to the people who choose it.")
        }
        PromptKind::Eng => format!(
            "People who chose this item also chose these items: {}. {about} Summarise \
             what these descriptions have in common.",
            quoted()
        ),
        PromptKind::RecEng if neighbors.is_empty() => format!(
            "{about} What would you say to recommend this item to the people who would \
             choose it?"
        ),
        PromptKind::RecEng => format!(
            "People who chose this item also chose these items: {}. {about} What would \
             you say to recommend this item to others, given the appealing \
             characteristics it shares with those items?",
            quoted()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_strategy_builds_its_prompts_for_a_fixture_item() {
        let item = ItemText {
            title: "Matrix, The (1999)".into(),
            categories: vec!["Action".into(), "Sci-Fi".into()],
            brand: None,
        };
        let d = describe(&item);
        assert_eq!(d, "The Matrix (1999) (Action, Sci-Fi)");
        let nb = vec!["Alien (1979) (Horror, Sci-Fi)".to_string()];
        let mut seen = std::collections::BTreeSet::new();
        for s in Strategy::ALL {
            for &k in s.prompts() {
                let p = prompt(k, &d, &nb);
                assert!(p.contains("\"The Matrix (1999) (Action, Sci-Fi)\""), "{p}");
                assert_eq!(p.contains("Alien (1979)"), s.needs_neighbors(), "{p}");
                assert_eq!(
                    p.to_lowercase().contains("recommend"),
                    matches!(s, Strategy::Rec | Strategy::RecEng),
                    "{p}"
                );
                assert!(seen.insert(p), "prompt {k:?} repeats another");
            }
        }
        assert_eq!(seen.len(), 8);
        // Without neighbours the engagement prompts ask about the item alone.
        let p = prompt(PromptKind::Eng, &d, &[]);
        assert!(!p.contains("also chose"), "{p}");
    }
}
