"""Students on the Hub: the model card rendered from the robustness report, and the push
(``python -m hf_robust_distill.hub <folder> <repo_id>``)."""

from .card import plain_name, training_settings, write_student_card
from .push import PushToHubError, RefusedPush, check_repo_id, push_robust_student

__all__ = ["check_repo_id", "plain_name", "push_robust_student", "PushToHubError", "RefusedPush", "training_settings",
           "write_student_card"]
