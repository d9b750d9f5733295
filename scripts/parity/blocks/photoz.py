"""The convolutional ("inception") and magnitude branches of AstroMAE.

Layer layout and channel widths follow shared/REFERENCE.md; Sequential indices matter,
because they become checkpoint keys (`inception_model.vis_inception.2.branch1.conv.weight`).
"""
import torch
import torch.nn as nn


class ConvBlock(nn.Module):
    """Conv2d (with bias) -> BatchNorm2d (eps 1e-5) -> ReLU."""

    def __init__(self, cin, cout, kernel_size, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=padding, bias=True)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class InceptionBlock(nn.Module):
    """Four branches concatenated on channels: 1x1; 1x1->3x3; 1x1->5x5; maxpool->1x1.

    With `custom=True` branch3 is built (its weights exist) but not used in forward.
    """

    def __init__(self, cin, c1, c3r, c3, c5r, c5, pool_proj, custom=False):
        super().__init__()
        self.custom = custom
        self.branch1 = ConvBlock(cin, c1, 1)
        self.branch2 = nn.Sequential(ConvBlock(cin, c3r, 1), ConvBlock(c3r, c3, 3, padding=1))
        self.branch3 = nn.Sequential(ConvBlock(cin, c5r, 1), ConvBlock(c5r, c5, 5, padding=2))
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1), ConvBlock(cin, pool_proj, 1)
        )

    def forward(self, x):
        b1 = self.branch1(x)
        b2 = self.branch2(x)
        b4 = self.branch4(x)
        if self.custom:
            return torch.cat([b1, b2, b4], dim=1)
        return torch.cat([b1, b2, self.branch3(x), b4], dim=1)


class Input_Mix_Model(nn.Module):
    """Inception branch over the image plus an MLP over the 5 magnitudes: 1096 + 1024."""

    def __init__(self, in_chans=5, img_size=32):
        super().__init__()
        # The first 1x1 conv is registered twice: as `conv2d_init` and as vis_inception[0]
        # (the same module object), so a state_dict lists its tensors under both names.
        self.conv2d_init = nn.Conv2d(in_chans, 32, kernel_size=1)
        s8 = img_size // 8
        self.vis_inception = nn.Sequential(
            self.conv2d_init,
            nn.AvgPool2d(2),
            InceptionBlock(32, 16, 16, 16, 16, 16, 16),
            InceptionBlock(64, 16, 16, 16, 16, 16, 16),
            nn.AvgPool2d(2),
            InceptionBlock(64, 8, 8, 8, 8, 8, 8),
            InceptionBlock(32, 8, 8, 8, 8, 8, 8),
            nn.AvgPool2d(2),
            InceptionBlock(32, 4, 4, 4, 4, 4, 4, custom=True),
            nn.Flatten(),
            nn.Linear(12 * s8 * s8, 1096),
            nn.ReLU(),
            nn.Linear(1096, 1096),
        )
        self.magnitude_block = nn.Sequential(
            nn.Linear(in_chans, 1024),
            nn.ReLU(),
            nn.Linear(1024, 1024),
            nn.ReLU(),
            nn.Linear(1024, 1024),
            nn.ReLU(),
            nn.Linear(1024, 1024),
            nn.ReLU(),
            nn.Linear(1024, 1024),
        )

    def forward(self, image, magnitudes):
        return torch.cat(
            [self.vis_inception(image), self.magnitude_block(magnitudes.float())], dim=1
        )
