import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load("corruption_robustness.py")
launch_gradio_widget(module)
