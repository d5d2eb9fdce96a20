"""Extractive answering (docs.extract): the answer type a question asks for, the windows that
answer it, the gate that says when none does, and the question's language."""

from __future__ import annotations

import pytest

from cuvee.docs.extract import (
    RANK_WEIGHTS,
    Candidate,
    answer_type,
    candidates,
    counted_units,
    has_type,
    language,
    rank_features,
    widen,
)
from cuvee.docs.retrieval import Hit


def hit(text: str, title: str = "Doc", section: str = "", n: int = 0) -> Hit:
    return Hit(n, n, f"/docs/d{n}.md", title, section or title, 0, len(text), text, 1.0)


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("How many days of leave do I get?", "number"),
        ("Combien de personnes ont été créditées ?", "number"),
        ("Quel est le montant de l'indemnité ?", "number"),
        ("What is the price of the Heron X2?", "number"),
        ("When does the office close for the summer?", "date"),
        ("À quelle date la version 4.2 est-elle sortie ?", "date"),
        ("Who approves expenses above 500 euros?", "name"),
        ("Qui assure la permanence du samedi ?", "name"),
        ("Is remote work allowed on Tuesdays?", None),
        # "when" inside a clause is a conjunction, not the question
        ("What should I do when the status light flashes amber?", None),
        ("De combien de temps dispose-t-on pour réclamer quand le service tombe ?", "number"),
        ("Under the travel policy, when must flights be booked?", "date"),
        ("Which countries are on the restricted travel list?", "name"),
        ("Quelle est la surface du site de Villeurbanne ?", "number"),
    ],
)
def test_the_answer_type_a_question_asks_for(question, kind) -> None:
    assert answer_type(question) == kind


def test_a_typed_window_holds_an_answer_of_that_type_the_question_lacks() -> None:
    q = "How many days after the 2024 audit must reports be filed?"
    assert has_type("number", "Reports are filed within 30 days.", q)
    assert not has_type("number", "The 2024 audit covers reports.", q)  # only the question's
    assert has_type("date", "The office closes on 14 August.", "When?")
    assert has_type("date", "Released 2025-03-02.", "When?")
    assert not has_type("date", "The office closes in summer.", "When?")
    who = "Who approves the Heron budget?"
    assert has_type("name", "The budget is approved by Dana Okafor.", who)
    assert not has_type("name", "Heron budgets are approved by finance.", who)
    # a capital that starts any sentence is no name; one after a label's colon may be
    signs = "Qui signe les commandes chez Nexalys ?"
    assert not has_type("name", "Le président de Nexalys signe. La directrice valide.", signs)
    assert has_type("name", "Le président de Nexalys, Franck Delmas, signe.", signs)
    assert has_type("name", "Agent : Lucie", signs)
    # a month, an article after a label and a product's code name no one
    called = "Who called the customer back about her Heron X3?"
    assert not has_type("name", "Details: The agent confirmed the date of 24 June 2025.", called)
    assert not has_type("name", "The voucher is only for owners of the X1.", called)
    assert has_type("name", "Details: Rhys Morgan called her back.", called)


def test_the_window_that_answers_wins_over_one_that_only_shares_words() -> None:
    text = (
        "GPT-4 was credited to 87 researchers. The Gemini project lists a total of 943 people "
        "who worked on it. Gemini was released in December."
    )
    found = candidates("How many people worked on the Gemini project?", [hit(text)])
    assert "943" in found[0].text and "87" not in found[0].text
    assert found[0].answers


def test_the_ranker_reads_every_feature_it_has_a_weight_for() -> None:
    found = candidates("How many people worked on the Gemini project?", [hit("Gemini had 943.")])
    assert set(rank_features(found[0])) == set(RANK_WEIGHTS)


def test_a_window_the_gate_refuses_never_comes_before_one_it_lets_answer() -> None:
    # the long two-sentence window scores higher with the ranker (more of the question's
    # terms, longer), but it names Gemini only after the number, so it does not answer
    text = (
        "GPT-4 was credited to 87 researchers on the project who worked on it. The Gemini "
        "project lists a total of 943 people who worked on it, more than any model before."
    )
    found = candidates("How many people worked on the Gemini project?", [hit(text)])
    refused = [c for c in found if not c.answers]
    accepted = [c for c in found if c.answers]
    assert accepted and refused
    assert max(c.score for c in refused) > min(c.score for c in accepted)
    assert found[: len(accepted)] == accepted
    assert "943" in found[0].text and "87" not in found[0].text


def test_a_fact_split_from_its_subject_is_found_in_a_two_sentence_window() -> None:
    text = (
        "The night shift is covered by Dana Okafor. She can be reached on extension 4471. "
        "The day shift has no fixed contact."
    )
    best = candidates("Which extension reaches the night shift contact?", [hit(text)])[0]
    assert "4471" in best.text and "night shift" in best.text
    assert best.answers


def test_no_window_answers_when_the_question_names_something_the_passages_lack() -> None:
    text = "The Heron X2 has a warranty of 2 years. The Heron X2 weighs 3 kg."
    found = candidates("What is the warranty of the Heron X3?", [hit(text)])
    assert not any(c.answers for c in found)
    assert "X3" in found[0].missing


def test_no_window_answers_without_the_type_asked_for() -> None:
    text = "Travel is booked through the portal. Managers approve trips."
    found = candidates("How many trips can I book per month?", [hit(text)])
    assert not any(c.answers for c in found)


def test_a_series_sibling_named_in_the_window_does_not_stand_for_the_code_asked() -> None:
    # X1 is named earlier in the chunk, so it is "named before" the window; but the window
    # itself is about X2 and X3, siblings of the series, so it does not answer about X1
    text = (
        "The Heron X1 is no longer sold. "
        "The battery is covered for 12 months on the Heron X2 and for 24 months on the X3."
    )
    found = candidates("How long is the battery covered on the Heron X1?", [hit(text)])
    about_x2 = next(c for c in found if "X2" in c.text and "X1" not in c.text)
    assert "X1" in about_x2.missing and not about_x2.answers


def test_a_window_about_another_rank_does_not_answer() -> None:
    text = "The first production run is 8,000 units. The run starts in June."
    found = candidates("How many units will the second production run contain?", [hit(text)])
    assert not any(c.answers for c in found)
    assert "second" in found[0].missing
    same = candidates("How many units will the first production run contain?", [hit(text)])
    assert same[0].answers and "8,000" in same[0].text


def test_in_two_sentences_the_value_must_be_in_one_about_what_is_asked() -> None:
    text = "The X3 adds a larger water tank. The X3 comes with a 3-year warranty."
    found = candidates("What is the water tank capacity of the X3?", [hit(text)])
    assert not any(c.answers for c in found)
    filled = "The X3 adds a larger water tank. Its water tank capacity is 450 ml."
    best = candidates("What is the water tank capacity of the X3?", [hit(filled)])[0]
    assert best.answers and "450" in best.text


def test_a_subject_named_at_the_end_of_the_previous_retrieved_chunk_counts() -> None:
    header = "TICKET NR-20560\n\nOpened: 15 May 2025\nCustomer: Harbourside Hotel"
    body = "Details: the dock was replaced.\nFirst response time: 38 minutes."
    first = Hit(1, 7, "/docs/t.txt", "Tickets", "Tickets", 0, len(header), header, 1.0)
    # the next chunk of the same document, two newlines later
    start = len(header) + 2
    second = Hit(2, 7, "/docs/t.txt", "Tickets", "Tickets", start, start + len(body), body, 1.0)
    question = "What was the first response time on ticket NR-20560?"
    found = candidates(question, [first, second])
    value = next(c for c in found if "38 minutes" in c.text)
    assert value.missing == [] and value.answers
    # alone, the second chunk does not say which ticket it is about
    alone = next(c for c in candidates(question, [second]) if "38 minutes" in c.text)
    assert "NR-20560" in alone.missing


def _document_hit(document: str, part: str, doc_id: int = 9) -> Hit:
    """The chunk of ``document`` that starts at ``part``, with the document itself readable
    through ``candidates``' ``document`` argument."""
    start = document.index(part)
    return Hit(1, doc_id, "/docs/d.txt", "D", "D", start, start + len(part), part, 1.0)


TICKETS = (
    "SUPPORT TICKETS, MAY 2025\n\nExported for the monthly review.\n\n\n"
    "TICKET NR-20481\n\nOpened: 5 May 2025\nCustomer: Brightwell Stores\n"
    "First response time: 2 hours.\n\n\n"
    "TICKET NR-20560\n\nOpened: 15 May 2025\nCustomer: Harbourside Hotel\n"
    "Details: "
    + "The courier collected the unit and a replacement was delivered the same day. " * 8
    + "\nFirst response time: 38 minutes.\n"
)


def test_the_heading_a_window_is_under_names_its_subject_however_far_above() -> None:
    question = "What was the first response time on ticket NR-20560?"
    hit_ = _document_hit(TICKETS, "First response time: 38 minutes.")
    found = candidates(question, [hit_], document=lambda _: TICKETS)
    assert found[0].answers and "38 minutes" in found[0].text
    # the document's heading is more than SUBJECT_REACH characters above: without the
    # document, the chunk alone does not say which ticket it is about
    assert "NR-20560" in candidates(question, [hit_])[0].missing
    # the first ticket of the file is not what the whole file is about
    other = "What was the first response time on the Brightwell Stores ticket?"
    assert not candidates(other, [hit_], document=lambda _: TICKETS)[0].answers


def test_a_short_sections_text_before_a_window_names_its_subject() -> None:
    # the customer is named in the ticket's header, further before the window than
    # SUBJECT_REACH; the ticket is one short section, all of it about her
    ticket = (
        "SUPPORT TICKETS, MAY 2025\n\nExported for the monthly review.\n\n\n"
        "TICKET NR-20588\n\nCustomer: Mrs Olu Adeyemi, Leeds\nAgent: Sunita Kaur\n\n"
        + "Details: the customer asked about delivery dates and the trade-in voucher. " * 6
        + "She asked for a manager. Her call was returned by Rhys Morgan on 21 May.\n"
        + "\n\nTICKET NR-20602\n\nCustomer: Brightwell Stores\n\n"
        + "Details: the demo units were cleaned. " * 12
        + "Her call was returned by Nadia Felder.\n"
    )
    part = "She asked for a manager. Her call was returned by Rhys Morgan on 21 May."
    hit_ = _document_hit(ticket, part)
    assert ticket.index(part) - ticket.index("Olu") > 400
    question = "Who returned the call of Olu Adeyemi?"
    found = candidates(question, [hit_], document=lambda _: ticket)
    assert found[0].answers and "Rhys Morgan" in found[0].text
    # the next ticket's text is not hers: her name is in another section
    other = _document_hit(ticket, "Her call was returned by Nadia Felder.")
    found = candidates(question, [other], document=lambda _: ticket)
    assert not found[0].answers and "Olu" in found[0].missing


def test_a_date_questions_own_word_for_date_is_not_what_a_window_must_hold() -> None:
    # "date" and "a lieu" are how the question asks; held as words, they made the meeting's
    # "Date : ... / Lieu : ..." lines cover the question better than the party's own line
    text = (
        "- Date : mardi 18 mars 2025, de 9 h 30 à 12 h\n"
        "- Lieu : salle Mont-Blanc, site de Villeurbanne\n\n"
        "27 juin 2025 : fête d'été d'Atelier Boréal au parc de la Tête d'Or, à partir de 18 h."
        "\n\nDu 4 au 22 août 2025 : fermeture annuelle de l'atelier. L'été est calme."
    )
    question = "À quelle date a lieu la fête d'été d'Atelier Boréal ?"
    found = candidates(question, [hit(text, title="Comité produit")])
    assert found[0].answers and found[0].text.startswith("27 juin 2025 : fête")


def test_a_question_asking_for_several_things_gets_the_whole_list() -> None:
    text = (
        "5e étage :\n- salle Fourvière : 24 personnes, réservée le lundi matin ;\n"
        "- salle Croix-Rousse : 6 personnes.\n\nLa cuisine est au 4e étage."
    )
    question = "Quelles sont les salles de réunion du 5e étage ?"
    one = Candidate(0, 0, text.index(";") + 1, text[: text.index(";") + 1], 1.0, 1.0, True)
    whole = widen(question, one, text)
    assert whole.text.startswith("5e étage") and whole.text.endswith("Croix-Rousse : 6 personnes.")
    # a question about one thing keeps its window; so does a window in no list
    assert widen("Combien de places compte la salle Fourvière ?", one, text) == one
    prose = Candidate(
        0, text.index("La cuisine"), len(text), "La cuisine est au 4e étage.", 1, 1, True
    )
    assert widen(question, prose, text) == prose
    # a list longer than LIST_REACH is quoted as found
    long = "Salles :\n" + "".join(f"- salle {n} : {'x' * 40}\n" for n in range(30))
    first = Candidate(
        0, 0, long.index("\n- salle 1 "), long[: long.index("\n- salle 1 ")], 1, 1, True
    )
    assert widen(question, first, long) == first


def test_a_documents_header_names_what_all_of_it_is_about() -> None:
    guide = (
        "OFFICE GUIDE\nOpaline building, 112 Lafayette Street\n\n\n"
        + "1. ACCESS\n\n"
        + "The building is open on weekdays from 7:30 to 20:00 for staff and visitors. " * 6
        + "\n\n5. SAFETY\n\nThe next evacuation drill takes place on 13 May 2025."
    )
    hit_ = _document_hit(guide, "The next evacuation drill takes place on 13 May 2025.")
    question = "When is the next evacuation drill in the Opaline building?"
    found = candidates(question, [hit_], document=lambda _: guide)
    assert found[0].answers and found[0].missing == []
    assert not candidates(question, [hit_])[0].answers  # the chunk alone never names it


def test_a_code_named_before_is_the_subject_only_if_no_sibling_came_after_it() -> None:
    manual = (
        "# Heron X2 manual\n\n"
        + "This manual covers the X2 only; owners of the Heron X3 have their own manual, "
        "because the dock differs. "
        * 2
        + "\n\n## In the box\n\n- Heron X2 robot\n- Dock\n"
        + "\n\n## Specifications\n\n| Battery capacity | 5,200 mAh |\n"
    )
    hit_ = _document_hit(manual, "| Battery capacity | 5,200 mAh |")
    about_x3 = candidates(
        "What is the battery capacity of the Heron X3?", [hit_], document=lambda _: manual
    )
    assert not about_x3[0].answers and "X3" in about_x3[0].missing
    about_x2 = candidates(
        "What is the battery capacity of the Heron X2?", [hit_], document=lambda _: manual
    )
    assert about_x2[0].answers
    # a header that names two of a series is about neither
    notes = "# Firmware notes\nFor the Heron X2; builds for the Heron X3 are listed last.\n\n"
    notes += "## 3.4.1\n\n" + "Fixes and changes to the mapping of rooms and stairs. " * 10
    notes += "\nReleased on 2 April 2025.\n"
    hit_ = _document_hit(notes, "Released on 2 April 2025.")
    found = candidates(
        "When was firmware for the Heron X3 released?", [hit_], document=lambda _: notes
    )
    assert "X3" in found[0].missing


def test_a_number_of_what_the_question_counts_ranks_first() -> None:
    # "deux semaines" is a number too, and the longer window scored higher before
    text = (
        "Chaque salarié peut travailler à domicile jusqu'à trois jours par semaine. Le mardi "
        "est un jour de présence obligatoire au bureau pour toute l'équipe.\n\n"
        "L'accord du responsable d'équipe est nécessaire pour passer en télétravail complet "
        "pendant plus de deux semaines, à demander au moins un mois avant le début."
    )
    question = "Combien de jours de télétravail par semaine sont autorisés ?"
    found = candidates(question, [hit(text, title="Télétravail", section="Jours de télétravail")])
    assert found[0].counted and "trois jours" in found[0].text
    assert counted_units("How long is the warranty?") >= {"year", "month"}
    assert counted_units("Who approves it?") == frozenset()


def test_the_language_of_a_question() -> None:
    assert language("Combien de jours de congé ai-je ?") == "fr"
    assert language("Quel est le délai de préavis ?") == "fr"
    assert language("How many days of leave do I get?") == "en"
    assert language("Who approves expenses?") == "en"
    assert language("Les documents ne le disent pas.") == "fr"
    assert language("The documents do not say.") == "en"
    # "à" folds to the English article "a", and is French
    quoted = "Les clés restent autorisées, à condition d'être analysées à chaque branchement."
    assert language(quoted) == "fr"
    assert language("Invoices are paid within a month, a week after approval.") == "en"


def test_only_windows_that_may_answer_are_embedded() -> None:
    import numpy as np

    seen: list[str] = []

    def embed(texts):
        seen.extend(texts)
        vectors = np.ones((len(texts), 4), dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    text = "The Heron X2 weighs 3 kg. Its dock is white. The Heron X3 weighs 4 kg."
    question = "How much does the Heron X3 weigh?"
    found = candidates(question, [hit(text)], embed)
    judged = [c for c in found if not c.missing and c.typed]
    assert judged and len(judged) < len(found)
    # the question, then each window that misses nothing the question names and holds a number
    assert len(seen) == 1 + len(judged)
    assert all(c.similarity > 0.99 for c in judged)
    assert all(c.similarity == 0.0 for c in found if c not in judged)
    assert found[0].answers and "4 kg" in found[0].text
    seen.clear()
    candidates(question, [hit(text)], embed, every_window=True)
    assert len(seen) == 1 + len(found)


MANUAL = (
    "## Maintenance\n\n| Part | Clean | Replace |\n|---|---|---|\n"
    "| Dustbin | after every clean | not needed |\n"
    "| HEPA filter | every week | every 3 months |\n"
    "| Side brush | every 2 weeks | every 6 months |\n\n"
    "Clean the cliff sensors with a dry cloth."
)


def test_a_tables_row_is_a_window_read_with_the_tables_header() -> None:
    from cuvee.docs.layout import prose, table_header

    question = "How often should the HEPA filter be replaced?"
    found = candidates(question, [hit(MANUAL, title="Heron X2 manual")])
    best = found[0]
    # the row, not the whole table: "Replace" is only in the header, yet the row covers it
    assert best.answers and best.text.startswith("| HEPA filter |")
    assert best.coverage == 1.0  # "replaced" is in the header
    assert "Dustbin" not in best.text and "|---" not in best.text
    # a row is a whole record: no window joins two rows ("... HEPA filter ... Side brush ...")
    assert "Side brush" not in best.text
    assert not any(c.text.startswith("|") and "\n|" in c.text for c in found)
    row = MANUAL.index("| HEPA filter")
    assert table_header(MANUAL, row) == "| Part | Clean | Replace |"
    assert table_header(MANUAL, MANUAL.index("| Part")) == ""  # the header itself
    assert table_header(MANUAL, MANUAL.index("Clean the")) == ""  # no table
    assert prose(MANUAL, row, MANUAL.index("\n", row)) == (
        "Part: HEPA filter; Clean: every week; Replace: every 3 months."
    )


def test_a_row_without_a_header_reads_as_its_cells() -> None:
    from cuvee.docs.layout import prose

    text = "| Dock |\n| Battery | 5,200 mAh |"
    assert prose(text, 0, 8) == "Dock."
    assert prose(text, 9, len(text)) == "Battery, 5,200 mAh."


def test_a_column_headed_by_no_word_gives_its_cell_alone() -> None:
    from cuvee.docs.layout import prose

    text = "| # | Step | Owner |\n|---|---|---|\n| 3 | Sign the form | HR |"
    row = text.index("| 3")
    assert prose(text, row, len(text)) == "3; Step: Sign the form; Owner: HR."


def test_a_window_reads_as_prose_without_heading_marks_or_bullets() -> None:
    from cuvee.docs.layout import prose

    text = (
        "## Release 3.4.1\n\nOpened: 5 May\nCustomer: Harbourside\n- one fix\n"
        "- another fix, wrapped\n  over two lines\n\nPart-time staff\nget leave pro rata."
    )
    assert prose(text, 0, len(text)) == (
        "Release 3.4.1. Opened: 5 May. Customer: Harbourside. one fix. another fix, wrapped "
        "over two lines. Part-time staff get leave pro rata."
    )


def test_what_happens_asks_rather_than_says() -> None:
    # "happens" is in one window only (the team chat): as a rare term it outweighed "first
    # day", which the section's heading gives every window, and the chat answered
    text = (
        "New employees arrive at 09:30 on their first day and are welcomed by the people "
        "team.\n\nThe laptop is set up on the first day. The first week has no meetings.\n\n"
        "Team chat happens in the Larkspur workspace."
    )
    onboarding = hit(text, title="Onboarding", section="Your first day")
    found = candidates("What happens on my first day?", [onboarding])
    assert found[0].answers and found[0].text.startswith("New employees arrive")
