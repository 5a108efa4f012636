"""edgerec: an edge video recorder for single-board computers.

Cameras are recorded into keyframe-aligned, encrypted and signed segments; retention deletes footage
after a fixed period unless an open incident holds it; status and incident commands go over MQTT.
"""

__version__ = "0.1.0"
