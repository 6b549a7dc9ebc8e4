"""Open-domain short-answer QA, closed book: TriviaQA (rc.nocontext) and Natural Questions open.

- TriviaQA (`mandarjoshi/trivia_qa`, config `rc.nocontext`: the reading-comprehension questions without their
  evidence documents): question, question_id, answer{value, aliases[], normalized_value, normalized_aliases[],
  matched_wiki_entity_name, normalized_matched_wiki_entity_name, type}. The references are the answer's value
  and its aliases (as lm-evaluation-harness's triviaqa targets the aliases); the normalised forms add nothing
  once the judge normalises. The Hub's test split has no answers, so only train and validation are declared.
- NQ-open (`google-research-datasets/nq_open`, config `nq_open`): question (lower case, no "?"), answer[] (every
  accepted short answer). No id field: ids are f"{split}-{row}". Splits train and validation.

Both use the prompt "Question: <question>?\\nAnswer:", stop at the first newline and are judged by SQuAD-normalised
exact match (token F1 reported beside it).
"""

from __future__ import annotations

from .base import RecordError, require
from .generative import GenerativeExample, GenerativeTask, open_qa_example, qa_example, reference_list


def triviaqa_example(record: dict) -> GenerativeExample:
    """TriviaQA's schema: the references are answer.value, then answer.aliases (duplicates dropped)."""
    require(record, "question", "answer")
    answer = record["answer"]
    if not isinstance(answer, dict):
        raise RecordError(f"Invalid answer value: {answer!r} (must be an object with value and aliases)")
    value, aliases = answer.get("value"), answer.get("aliases") or []
    if not isinstance(value, str) and value is not None:
        raise RecordError(f"Invalid answer.value value: {value!r} (must be a string)")
    if isinstance(aliases, str) or not isinstance(aliases, (list, tuple)):
        raise RecordError(f"Invalid answer.aliases value: {aliases!r} (must be a list of strings)")
    return open_qa_example(record["question"], reference_list([value or "", *aliases], "answer.value/aliases"))


TASKS = (
    GenerativeTask("triviaqa", triviaqa_example, "mandarjoshi/trivia_qa", "rc.nocontext", id_field="question_id",
                   description="TriviaQA closed-book trivia questions (rc.nocontext), judged by exact match "
                               "with any of the answer's aliases."),
    GenerativeTask("nq_open", qa_example, "google-research-datasets/nq_open", "nq_open",
                   description="Natural Questions open: Google search questions with short Wikipedia answers, "
                               "judged by exact match with any accepted answer."),
)  # fmt: skip
