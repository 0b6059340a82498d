"""Runs Autobahn|Testsuite's `wstest` from a `pip install --prefix` directory (Python 2.7).

Usage: python2.7 wstest_launcher.py SITE_PACKAGES_DIR [wstest arguments...]

PYTHONPATH is not enough: zope.interface is a namespace package declared through a .pth file, and
.pth files are only processed for directories added with site.addsitedir.
"""

import site
import sys

site.addsitedir(sys.argv.pop(1))

from autobahntestsuite.wstest import run

sys.argv[0] = "wstest"
sys.exit(run())
