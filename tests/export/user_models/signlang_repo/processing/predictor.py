"""A FastAPI sign-language service's predictor: the model class (re-declared here from the training
notebook, where it lived in ``__main__``) and its own prediction code.  CNN over keypoint frames with
max-pooling, a 2-layer BiLSTM, nn.MultiheadAttention with a residual and LayerNorm, mean+max pooling,
MLP head; forward returns (logits, attention weights)."""
import numpy as np
import torch
from torch import nn


class SignLanguageModel(nn.Module):
    def __init__(self, input_dim=63, num_classes=5, hidden_dim=24, num_heads=4):
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv1d(input_dim, 32, kernel_size=5, padding=2), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(32, 40, kernel_size=3, padding=1), nn.ReLU())
        self.bilstm = nn.LSTM(40, hidden_dim, num_layers=2, batch_first=True, bidirectional=True, dropout=0.2)
        self.mha = nn.MultiheadAttention(2 * hidden_dim, num_heads, dropout=0.1, batch_first=True)
        self.norm = nn.LayerNorm(2 * hidden_dim)
        self.head = nn.Sequential(nn.Linear(4 * hidden_dim, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, num_classes))

    def forward(self, x):
        x = self.cnn(x.transpose(1, 2)).transpose(1, 2)
        out, _ = self.bilstm(x)
        attended, weights = self.mha(out, out, out)
        out = self.norm(out + attended)
        pooled = torch.cat([out.mean(dim=1), out.max(dim=1).values], dim=1)
        return self.head(pooled), weights


@torch.no_grad()
def predict(model, keypoints, classes):
    """The service's own prediction: (T, F) keypoints -> (label, probabilities)."""
    logits, _ = model(torch.from_numpy(np.asarray(keypoints, dtype=np.float32))[None])
    probs = torch.softmax(logits, dim=1)[0].numpy()
    return classes[int(np.argmax(probs))], probs
