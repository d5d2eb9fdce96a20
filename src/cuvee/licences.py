"""Licences of models and data: what each identifier allows, so lineage can say what a result may be
used for (a model trained on non-commercial data inherits that restriction)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Licence(BaseModel):
    """A licence as recorded in manifests and data reports."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str = ""
    url: str | None = None
    # None means unknown: nobody declared it, so nobody may assume either way.
    commercial_use: bool | None = None
    osi_approved: bool = False
    notes: str = ""


_KNOWN = [
    Licence(
        id="Apache-2.0",
        name="Apache License 2.0",
        url="https://www.apache.org/licenses/LICENSE-2.0",
        commercial_use=True,
        osi_approved=True,
    ),
    Licence(
        id="MIT",
        name="MIT License",
        url="https://opensource.org/license/mit",
        commercial_use=True,
        osi_approved=True,
    ),
    Licence(
        id="CC0-1.0",
        name="Creative Commons Zero 1.0",
        url="https://creativecommons.org/publicdomain/zero/1.0/",
        commercial_use=True,
    ),
    Licence(
        id="CC-BY-4.0",
        name="Creative Commons Attribution 4.0",
        url="https://creativecommons.org/licenses/by/4.0/",
        commercial_use=True,
        notes="attribution required",
    ),
    Licence(
        id="CC-BY-SA-3.0",
        name="Creative Commons Attribution-ShareAlike 3.0",
        url="https://creativecommons.org/licenses/by-sa/3.0/",
        commercial_use=True,
        notes="attribution and share-alike required (Dolly 15k uses it)",
    ),
    Licence(
        id="CC-BY-SA-4.0",
        name="Creative Commons Attribution-ShareAlike 4.0",
        url="https://creativecommons.org/licenses/by-sa/4.0/",
        commercial_use=True,
        notes="attribution and share-alike required",
    ),
    Licence(
        id="CC-BY-NC-4.0",
        name="Creative Commons Attribution-NonCommercial 4.0",
        url="https://creativecommons.org/licenses/by-nc/4.0/",
        commercial_use=False,
        notes="non-commercial: a model trained on it should not be used commercially",
    ),
    Licence(
        id="CC-BY-NC-SA-4.0",
        name="Creative Commons Attribution-NonCommercial-ShareAlike 4.0",
        url="https://creativecommons.org/licenses/by-nc-sa/4.0/",
        commercial_use=False,
        notes="non-commercial and share-alike",
    ),
    Licence(
        id="Gemma",
        name="Gemma Terms of Use",
        url="https://ai.google.dev/gemma/terms",
        commercial_use=True,
        osi_approved=False,
        notes=(
            "Not an OSI-approved open-source licence. Commercial use is allowed under the "
            "terms and the Gemma Prohibited Use Policy "
            "(https://ai.google.dev/gemma/prohibited_use_policy); derivatives, fine-tunes "
            "included, must carry the same use restrictions and a copy of the terms."
        ),
    ),
    Licence(
        id="proprietary",
        name="Proprietary (the organisation's own)",
        commercial_use=True,
        notes="owned by the organisation that declared it",
    ),
]

KNOWN_LICENCES: dict[str, Licence] = {lic.id.lower(): lic for lic in _KNOWN}

UNKNOWN = Licence(id="unknown", name="Not declared", commercial_use=None)


def resolve_licence(identifier: str | None) -> Licence:
    """Look a licence identifier up (case-insensitive); an unrecognised one is kept, with
    commercial use unknown, rather than guessed."""
    if not identifier or not identifier.strip():
        return UNKNOWN
    key = identifier.strip().lower()
    if key in KNOWN_LICENCES:
        return KNOWN_LICENCES[key]
    return Licence(
        id=identifier.strip(),
        name=identifier.strip(),
        commercial_use=None,
        notes="not in cuvee's licence table: check its terms yourself",
    )


def combined_commercial_use(licences: list[Licence]) -> bool | None:
    """False if any licence forbids commercial use, None if any is unknown, else True."""
    if any(lic.commercial_use is False for lic in licences):
        return False
    if any(lic.commercial_use is None for lic in licences):
        return None
    return True


def commercial_use_label(allowed: bool | None) -> str:
    """How a commercial-use verdict reads to a person."""
    return {True: "allowed", False: "NOT allowed", None: "unknown"}[allowed]
