// Where one is, for distances: the browser's position (asked once, when the user says so), or a city
// picked by hand from a small built-in list. Either way it goes to the server once,
// PATCH /api/users/me/ {"location": {lat, lon}}, and only a coarse point is stored (docs/security.md,
// "Location privacy"): others see "within N km", never where.

import { h } from "./ui.js";

/** The cities one can pick by hand: name, latitude, longitude (their centres). */
export const CITIES = [
  ["Amsterdam", 52.3676, 4.9041],
  ["Barcelona", 41.3874, 2.1686],
  ["Berlin", 52.52, 13.405],
  ["Brussels", 50.8503, 4.3517],
  ["Chicago", 41.8781, -87.6298],
  ["Dublin", 53.3498, -6.2603],
  ["Lisbon", 38.7223, -9.1393],
  ["London", 51.5072, -0.1276],
  ["Los Angeles", 34.0522, -118.2437],
  ["Lyon", 45.764, 4.8357],
  ["Madrid", 40.4168, -3.7038],
  ["Marseille", 43.2965, 5.3698],
  ["Milan", 45.4642, 9.19],
  ["Montreal", 45.5019, -73.5674],
  ["Munich", 48.1351, 11.582],
  ["New York", 40.7128, -74.006],
  ["Paris", 48.8566, 2.3522],
  ["Prague", 50.0755, 14.4378],
  ["Rome", 41.9028, 12.4964],
  ["San Francisco", 37.7749, -122.4194],
  ["Stockholm", 59.3293, 18.0686],
  ["Sydney", -33.8688, 151.2093],
  ["Tokyo", 35.6762, 139.6503],
  ["Toronto", 43.6532, -79.3832],
  ["Vienna", 48.2082, 16.3738],
  ["Zurich", 47.3769, 8.5417],
].map(([name, lat, lon]) => ({ name, lat, lon }));

/** `{lat, lon}` of a city of the list, by name; null for any other value. */
export function cityLocation(name) {
  const city = CITIES.find((c) => c.name === name);
  return city ? { lat: city.lat, lon: city.lon } : null;
}

/** The cities as <option>s (after whatever `select` holds already). */
export function fillCities(select) {
  select.append(...CITIES.map((c) => h("option", { value: c.name }, c.name)));
}

/**
 * The browser's position, asked now: `{lat, lon}`, or an Error whose message says, for a person, why
 * there is none (blocked for this page, not found, no such thing in this browser).
 */
export function currentPosition() {
  return new Promise((resolve, reject) => {
    if (!("geolocation" in navigator)) {
      reject(new Error("This browser cannot tell where you are: pick a city instead."));
      return;
    }
    navigator.geolocation.getCurrentPosition(
      (position) => resolve({ lat: position.coords.latitude, lon: position.coords.longitude }),
      (failure) =>
        reject(
          new Error(
            failure.code === failure.PERMISSION_DENIED
              ? "Location is blocked for this page: allow it in the browser, or pick a city instead."
              : "Your position could not be found: try again in a moment, or pick a city instead.",
          ),
        ),
      { maximumAge: 600_000, timeout: 15_000 },
    );
  });
}

/**
 * The location a sign-up form's `location` choice stands for: null (not now), the browser's position
 * ("here"), or a city's. A refusal throws `{fields: {location: why}}`, said beside the field.
 */
export async function chosenLocation(select) {
  const choice = select.value;
  if (!choice) return null;
  if (choice !== "here") return cityLocation(choice);
  try {
    return await currentPosition();
  } catch (error) {
    throw { message: error.message, fields: { location: error.message } };
  }
}
