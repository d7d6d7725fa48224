"""A VGG-19 Show-Attend-Tell variant: a VGG-style convolutional trunk (the real repository takes
torchvision's VGG-19 features without the last max-pool; a small one keeps the tests fast), pooled to
14x14 and flattened to (B, 196, C) inside the encoder."""
from torch import nn


class Encoder(nn.Module):
    def __init__(self, channels=32, grid=14):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]

        self.vgg = nn.Sequential(*block(3, 16), *block(16, 24), *block(24, channels))
        self.pool = nn.AdaptiveAvgPool2d((grid, grid))

    def forward(self, img):
        x = self.pool(self.vgg(img))  # (B, C, 14, 14)
        x = x.permute(0, 2, 3, 1)
        return x.view(x.size(0), -1, x.size(-1))  # (B, 196, C)
