"""CNN+LSTM image captioning: Flickr8k-layout data, cached CNN features, a merge LSTM decoder, BLEU-1..4."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the user's terminal
